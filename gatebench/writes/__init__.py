"""Where the adapter writes, after generation: each image's record beside its PNG (``records``)
and the findings that say why placement fails (``findings``). The measurement itself is
``gatebench.adapters.write_meter``, inside the adapter hooks."""
