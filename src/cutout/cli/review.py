"""`cutout review serve`: the correction page and its API over a feedback store."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cutout.cli.common import app, console

review_app = typer.Typer(help="Review the cutouts the model was unsure of.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("serve")
def serve(
    feedback_uri: Annotated[
        str, typer.Option(help="Review queue and retraining store (folder or s3://).")
    ] = ".cutout/feedback",
    host: Annotated[str, typer.Option(help="Address to listen on; beyond 127.0.0.1 a token is required.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    token_env: Annotated[
        str, typer.Option(help="Environment variable holding the API token (unset: no token).")
    ] = "CUTOUT_REVIEW_TOKEN",
    claim_minutes: Annotated[
        float, typer.Option(min=0.1, help="How long opening an item reserves it for its reviewer.")
    ] = 10.0,
) -> None:
    """Serve the review page and its JSON API (/api/items, schema at /openapi.json)."""
    from cutout.review.app import check_binding, serve_review

    # From the environment, not a flag: a flag's value shows in the process list.
    token = os.environ.get(token_env) or None
    check_binding(host, token)
    console.print(f"review page: http://{host}:{port}/  (feedback store {feedback_uri}, "
                  f"token {'required' if token else 'off'})", highlight=False)  # fmt: skip
    serve_review(feedback_uri, host=host, port=port, token=token, claim_seconds=claim_minutes * 60)
