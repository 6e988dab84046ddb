"""The embedded training module: trains an adapter on a frozen base and writes checkpoints.

It reuses gatebench's adapter architectures and checkpoint format (dependency direction:
train -> gatebench). The trainer itself lands with the training issue; `gatebench train` and
`python -m gatebench train` say so until then.
"""
