import sys

from rich.console import Console

Console(stderr=True).print("[bold red]error:[/bold red] the training module is not available yet "
                           "in this version; see README.md")
sys.exit(2)
