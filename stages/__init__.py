"""One thin Typer CLI per DVC stage; ``cxrpipe <stage>`` runs the same function."""
