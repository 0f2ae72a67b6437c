"""DVC stage `transfer_prepare`: an external labelled dataset (NIH ChestX-ray14, CheXpert, RSNA Pneumonia)
-> data/transfer/<dataset>/ (manifest with its own labels, images.h5, prepare report, rejects list)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    dataset: Annotated[str, typer.Option(help="registry name: nih_cxr14 | chexpert | rsna_pneumonia")],
    params: Annotated[Path, typer.Option(help="params.yaml; reads `transfer_data` and `prepare`")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="output folder (default data/transfer/<dataset>)")] = None,
) -> None:
    """Read one transfer dataset; write its prepared folder in prepare's format."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import PrepareConfig
    from cxrpipe.data.transfer_prepare import TransferDataConfig, run_transfer_prepare
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("transfer_prepare"):
        p = load_params(params)
        run_transfer_prepare(dataset, section(p, "transfer_data", TransferDataConfig), section(p, "prepare", PrepareConfig),
                             out or Path("data/transfer") / dataset)


if __name__ == "__main__":
    typer.run(main)
