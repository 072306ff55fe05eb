"""The cluster step: product types found on a synthetic catalogue, overrides winning, splits, S3."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cutout.data.cluster import ClusterSummary, assign_splits, cluster_dataset, load_overrides
from cutout.data.features import FEATURE_NAMES, LIGHT_TYPE, SILHOUETTE_PROTOTYPES, propose_clusters
from cutout.data.manifest import read_jsonl, read_manifest
from cutout.data.synth import PRODUCT_TYPES, synthesize_dataset
from cutout.platform import storage
from helpers import tree_digest

CATALOGUE = 180  # 30 pairs of each type, as the clean step writes them: 320×320
SIZE = (320, 320)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("catalogue")
    synthesize_dataset(str(folder), CATALOGUE, size=SIZE, seed=0)
    return folder


@pytest.fixture(scope="module")
def clustered(catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Cluster the catalogue once; what most tests inspect."""
    before = tree_digest(catalogue)
    out = tmp_path_factory.mktemp("clustered")
    calls: list[None] = []
    summary = cluster_dataset(str(catalogue), str(out), on_progress=lambda: calls.append(None))
    return {"out": out, "summary": summary, "before": before, "progress": len(calls)}


def _records(dataset: Path | str) -> dict[str, dict]:
    return {record["id"]: record for record in read_manifest(str(dataset))}


# --- clustering quality ------------------------------------------------------------------------


def test_kmeans_finds_the_product_types_of_the_synthetic_catalogue(clustered: dict) -> None:
    summary = clustered["summary"]
    assert summary.purity >= 0.9 and summary.adjusted_rand_index >= 0.75
    assert summary.type_accuracy >= 0.9  # the clusters carry the right names, not just clean groups
    written = json.loads((clustered["out"] / "summary.json").read_text())
    assert (
        written["purity"] == summary.purity and written["adjusted_rand_index"] == summary.adjusted_rand_index
    )


def test_purity_holds_for_another_catalogue_and_another_kmeans_seed(tmp_path: Path) -> None:
    synthesize_dataset(str(tmp_path / "in"), CATALOGUE, size=SIZE, seed=1)
    summary = cluster_dataset(str(tmp_path / "in"), str(tmp_path / "out"), seed=3)
    assert summary.purity >= 0.9 and summary.type_accuracy >= 0.9
    assert summary.adjusted_rand_index >= 0.75


def test_light_products_are_told_by_contrast_and_extra_clusters_repeat_types() -> None:
    rng = np.random.default_rng(0)
    prototypes = list(SILHOUETTE_PROTOTYPES.values())
    shapes = np.array([prototypes[i % 5] for i in range(120)]) + rng.normal(0, 0.02, (120, 7))
    colour = np.column_stack([np.full(120, 50.0), np.zeros(120), np.zeros(120), np.full(120, 90.0)])
    contrast = np.where(np.arange(120) % 4 == 0, rng.uniform(5, 12, 120), rng.uniform(40, 70, 120))
    features = np.column_stack([shapes, colour, contrast])
    assert features.shape[1] == len(FEATURE_NAMES)
    proposal = propose_clusters(features, k=8)
    assert proposal.cluster_types[-1] == LIGHT_TYPE
    assert set(np.flatnonzero(proposal.cluster_ids == 7)) == set(range(0, 120, 4))
    assert set(proposal.cluster_types) == set(PRODUCT_TYPES)  # 7 silhouette clusters name all 5 types
    no_light = propose_clusters(features[contrast > 20], k=6)  # a catalogue without light products
    assert LIGHT_TYPE not in [no_light.cluster_types[c] for c in no_light.cluster_ids]


# --- the output dataset ------------------------------------------------------------------------


def test_records_gain_cluster_fields_and_files_are_copied(catalogue: Path, clustered: dict) -> None:
    out, summary = clustered["out"], clustered["summary"]
    records = _records(out)
    assert set(records) == set(_records(catalogue)) and summary.count == summary.kept == CATALOGUE
    assert clustered["progress"] == CATALOGUE and summary.rejected == 0
    for record in records.values():
        assert record["cluster"] in PRODUCT_TYPES and record["cluster_source"] == "kmeans"
        assert record["split"] in ("train", "val") and isinstance(record["cluster_id"], int)
        for key in ("image", "mask"):
            assert (out / record[key]).read_bytes() == (catalogue / record[key]).read_bytes()
    assert summary.sizes == Counter(r["cluster"] for r in records.values())
    clusters = json.loads((out / "clusters.json").read_text())
    assert clusters["feature_names"] == list(FEATURE_NAMES) and len(clusters["clusters"]) == 6
    assert {c["type"] for c in clusters["clusters"]} == set(PRODUCT_TYPES)
    assert all(set(c["centroid"]) == set(FEATURE_NAMES) for c in clusters["clusters"])


def test_split_is_stratified_by_cluster(clustered: dict) -> None:
    records = _records(clustered["out"]).values()
    for cluster, size in clustered["summary"].sizes.items():
        val = sum(r["split"] == "val" for r in records if r["cluster"] == cluster)
        assert val == max(1, round(0.1 * size)), cluster
    assert assign_splits(["a"], ["shorts"], 0.1) == ["train"]
    assert assign_splits(["a", "b"], ["shorts"] * 2, 0.1).count("val") == 1
    assert assign_splits(["a", "b", "c"], ["shorts"] * 3, 0.0) == ["train"] * 3


def test_auto_accepted_pairs_always_train(catalogue: Path, tmp_path: Path) -> None:
    """Their masks are the serving model's own: in the val split they would score it perfect."""
    ids = [f"p{i}" for i in range(20)]
    everyone = assign_splits(ids, ["shorts"] * 20, 0.5)
    auto = {pair for pair, split in zip(ids, everyone, strict=True) if split == "val"}
    splits = assign_splits(ids, ["shorts"] * 20, 0.5, train_only=auto)
    assert all(split == "train" for pair, split in zip(ids, splits, strict=True) if pair in auto)
    assert splits.count("val") == round(0.5 * (20 - len(auto)))  # the others are split as before

    records = [json.loads(line) for line in (catalogue / "manifest.jsonl").read_text().splitlines()]
    for record in records:
        record["source"] = "feedback-auto"
    marked = tmp_path / "marked"
    shutil.copytree(catalogue, marked)
    (marked / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cluster_dataset(str(marked), str(tmp_path / "out"), val_fraction=0.2)
    assert {r["split"] for r in _records(tmp_path / "out").values()} == {"train"}


def test_input_unchanged_and_a_rerun_writes_the_same_bytes(
    catalogue: Path, clustered: dict, tmp_path: Path
) -> None:
    assert tree_digest(catalogue) == clustered["before"]
    cluster_dataset(str(catalogue), str(tmp_path / "again"))
    assert tree_digest(tmp_path / "again") == tree_digest(clustered["out"])


def test_contact_sheet_names_every_cluster_with_its_size(clustered: dict) -> None:
    page = (clustered["out"] / "report" / "index.html").read_text()
    for cluster_id, (name, size) in enumerate(clustered["summary"].sizes.items()):
        assert f"{name} (cluster {cluster_id}): {size} pairs" in page
    assert len(list((clustered["out"] / "report" / "img").glob("*.png"))) == 6 * 6


def test_an_unreadable_pair_is_rejected_with_its_reason(catalogue: Path, tmp_path: Path) -> None:
    broken = tmp_path / "in"
    for name in tree_digest(catalogue):
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_bytes((catalogue / name).read_bytes())
    (broken / "images" / "synth-000007.jpg").write_bytes(b"not a photo")
    summary = cluster_dataset(str(broken), str(tmp_path / "out"))
    assert (summary.kept, summary.rejected, summary.rejects) == (CATALOGUE - 1, 1, {"not_an_image": 1})
    assert [r["id"] for r in read_jsonl(str(tmp_path / "out" / "rejects.jsonl"))] == ["synth-000007"]
    assert "synth-000007" not in _records(tmp_path / "out")


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "csv"])
def test_overrides_win_and_are_recorded(catalogue: Path, clustered: dict, tmp_path: Path, form: str) -> None:
    proposed = _records(clustered["out"])
    chosen = sorted(proposed)[:3]
    wanted = {
        pair_id: next(t for t in PRODUCT_TYPES if t != proposed[pair_id]["cluster"]) for pair_id in chosen
    }
    wanted["synth-000010"] = proposed["synth-000010"]["cluster"]  # confirms k-means: applied, not a change
    file = tmp_path / f"overrides.{form}"
    rows = "id,type\n" + "".join(f"{pair_id},{kind}\n" for pair_id, kind in wanted.items())
    file.write_text(json.dumps(wanted) if form == "json" else rows)
    summary = cluster_dataset(str(catalogue), str(tmp_path / "out"), overrides=str(file))
    assert (summary.overrides_applied, summary.overrides_changed) == (4, 3)
    for pair_id, record in _records(tmp_path / "out").items():
        if pair_id in wanted:
            assert (record["cluster"], record["cluster_source"]) == (wanted[pair_id], "override")
            assert record["cluster_id"] == proposed[pair_id]["cluster_id"]  # the proposal stays on record
        else:
            assert {k: record[k] for k in ("cluster", "cluster_source")} == {
                k: proposed[pair_id][k] for k in ("cluster", "cluster_source")
            }
    assert "moved by overrides" in (tmp_path / "out" / "report" / "index.html").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"synth-000001": "shorts", "no-such-pair": "shorts"}', "not in the dataset: 'no-such-pair'"),
        ('{"synth-000001": "sandals"}', r"unknown product types \['sandals'\]"),
        ("synth-000001,shorts\nsynth-000001,long_pants\n", "listed twice"),
        ("synth-000001;shorts\n", "line 1: expected 'id,type'"),
        ('["synth-000001"]', "expected a JSON object"),
    ],
)
def test_a_bad_overrides_file_is_a_clear_error_before_anything_is_written(
    catalogue: Path, tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "overrides").write_text(content)
    with pytest.raises(ValueError, match=message):
        cluster_dataset(str(catalogue), str(tmp_path / "out"), overrides=str(tmp_path / "overrides"))
    assert not (tmp_path / "out").exists()


def test_load_overrides_reads_csv_with_or_without_header(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,type\na, shorts\n\nb,light_coloured\n")
    (tmp_path / "b.csv").write_text("a,shorts\n")
    assert load_overrides(str(tmp_path / "a.csv"), {"a", "b"}) == {"a": "shorts", "b": "light_coloured"}
    assert load_overrides(str(tmp_path / "b.csv"), {"a"}) == {"a": "shorts"}


def test_bad_arguments_are_refused(catalogue: Path, tmp_path: Path) -> None:
    for inside in (catalogue, catalogue / "clusters"):
        with pytest.raises(ValueError, match="never writes into its input"):
            cluster_dataset(str(catalogue), str(inside))
    with pytest.raises(ValueError, match="k must be at least 2"):
        cluster_dataset(str(catalogue), str(tmp_path / "out"), k=1)
    with pytest.raises(ValueError, match="val_fraction"):
        cluster_dataset(str(catalogue), str(tmp_path / "out"), val_fraction=1.0)


# --- S3 ----------------------------------------------------------------------------------------


def test_s3_round_trip(s3_bucket: str, tmp_path: Path) -> None:
    synthesize_dataset(f"{s3_bucket}/clean", 48, size=SIZE, seed=2)
    (tmp_path / "overrides.csv").write_text("synth-000003,shorts\n")
    storage.copy(str(tmp_path / "overrides.csv"), f"{s3_bucket}/overrides.csv")
    summary = cluster_dataset(
        f"{s3_bucket}/clean", f"{s3_bucket}/clustered", overrides=f"{s3_bucket}/overrides.csv"
    )
    assert isinstance(summary, ClusterSummary) and summary.kept == 48 and summary.overrides_applied == 1
    records = _records(f"{s3_bucket}/clustered")
    assert len(records) == 48 and records["synth-000003"]["cluster_source"] == "override"
    record = records["synth-000005"]
    for key in ("image", "mask"):
        assert storage.read_bytes(f"{s3_bucket}/clustered/{record[key]}") == storage.read_bytes(
            f"{s3_bucket}/clean/{record[key]}"
        )
    for name in ("clusters.json", "summary.json", "rejects.jsonl", "report/index.html"):
        assert storage.exists(f"{s3_bucket}/clustered/{name}"), name
    assert json.loads(storage.read_text(f"{s3_bucket}/clustered/summary.json"))["kept"] == 48
