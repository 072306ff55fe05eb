"""The feedback store's layout: where serving and review put pairs, and where the pipeline finds them.

Under a feedback root (a local folder or ``s3://bucket/prefix``)::

    retrain/auto/images/<id>.<ext>          a photo the model was confident about, as the client sent it
    retrain/auto/masks/<id>.png             its predicted mask (8-bit, the photo's upright size)
    retrain/auto/records/<id>.json          its manifest record, written last
    retrain/auto/manifest.jsonl             a snapshot of the records, for readers that want one
    retrain/corrected/images|masks|records  pairs a person accepted or corrected, the same way
    review/pending/<id>/photo.<ext>         a photo the model was unsure of
    review/pending/<id>/mask.png            its predicted mask
    review/pending/<id>/item.json           score, threshold, model, time; written last
    review/rejected/<id>/photo.<ext>, ...   an item a person rejected, its files, and
    review/rejected/<id>/item.json          its metadata with the reason, written last

One record file per pair, not an appended ``manifest.jsonl``: S3 has no append, and replicas would race
on a shared file. A record or ``item.json`` is written after the files it names, so a reader that trusts
only items with one never sees a half-written item. The transformer (`cutout.serve.feedback`), the
review queue (`cutout.review.queue`) and the pipeline's merge step (`cutout.pipeline.merge`) all find
their places here.
"""

from __future__ import annotations

import re

from cutout.platform import storage

AUTO, CORRECTED = "auto", "corrected"
AUTO_STORE = "retrain/auto"
CORRECTED_STORE = "retrain/corrected"
STORES = {CORRECTED: CORRECTED_STORE, AUTO: AUTO_STORE}  # the retraining stores, in order of trust
REVIEW_PENDING = "review/pending"
REVIEW_REJECTED = "review/rejected"
RECORDS = "records"
ITEM_FILE = "item.json"
# Item ids become file and folder names: letters, digits, '-' and '_' only (no traversal, no dots).
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_item_id(item_id: str) -> str:
    """Return `item_id` if it is safe as a file name, else raise ValueError naming it."""
    if not isinstance(item_id, str) or not ITEM_ID_PATTERN.fullmatch(item_id):
        raise ValueError(f"invalid item id {item_id!r}: use 1-128 letters, digits, '-' or '_'")
    return item_id


def store_uri(feedback_uri: str, store: str) -> str:
    """A retraining store under the root: `auto` or `corrected`."""
    return storage.join(feedback_uri, STORES[store])


def records_uri(store: str) -> str:
    """A retraining store's folder of record files."""
    return storage.join(store, RECORDS)


def record_uri(store: str, item_id: str) -> str:
    """One pair's record file in a retraining store."""
    return storage.join(records_uri(store), f"{check_item_id(item_id)}.json")


def record_files(store: str) -> list[str]:
    """A retraining store's record files, in id order: the pairs that are complete."""
    return sorted(storage.list_files(records_uri(store), suffixes=(".json",)))


def pending_root(feedback_uri: str) -> str:
    """The review queue's folder of pending items."""
    return storage.join(feedback_uri, REVIEW_PENDING)


def pending_uri(feedback_uri: str, item_id: str) -> str:
    """One pending item's folder; ValueError for an id that is not a safe name."""
    return storage.join(pending_root(feedback_uri), check_item_id(item_id))


def rejected_uri(feedback_uri: str, item_id: str) -> str:
    """One rejected item's folder."""
    return storage.join(feedback_uri, REVIEW_REJECTED, check_item_id(item_id))
