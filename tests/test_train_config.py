"""One typed training config: `cutout train`'s parser, the pipeline and the launchers read the same one."""

from __future__ import annotations

import pytest

from cutout.pipeline.steps import LOW_RESOLUTION, TrainSettings
from cutout.train.config import DEFAULTS, TrainConfig, on_cluster_ranks, parser


def test_the_parser_defaults_are_the_configs():
    parsed = TrainConfig.parse(["data/prepared"])

    assert parsed == DEFAULTS.replace(data="data/prepared")
    assert (parsed.model, parsed.pretrained, parsed.lr) == (
        "u2netp",
        "u2netp",
        3e-5,
    )  # fine-tune the official


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig("s3://b/augmented"),
        TrainConfig("d", extra_data=("real", "more"), extra_val_data=["holdout"], pretrained="none", lr=1e-3,
                    resume=True, tracking=False, run_name="pipeline-final", warmup_epochs=0.5, crop=144),
        on_cluster_ranks(TrainConfig("s3://b/d", checkpoint_dir="s3://b/c", run_info="s3://b/r.json"), True),
    ],
)  # fmt: skip
def test_a_config_written_as_arguments_reads_back_the_same(config):
    argv = config.to_argv()

    assert TrainConfig.parse(argv) == config
    assert argv[0] == config.data and all(f"--{flag}" not in argv for flag in ("model", "epochs"))  # defaults


def test_from_scratch_is_spelt_none_and_read_as_no_weights():
    assert TrainConfig("d", pretrained="").pretrained is None
    assert TrainConfig.parse(["d", "--pretrained", "none"]).pretrained is None
    assert TrainConfig("d", pretrained=None).to_argv() == ["d", "--pretrained", "none"]


def test_every_setting_has_a_flag_with_help():
    text = parser().format_help()

    for name in DEFAULTS.__dataclass_fields__:
        assert name == "data" or f"--{name.replace('_', '-')}" in text


def test_the_pipeline_trains_with_cutout_trains_defaults_and_its_own_stages():
    settings = TrainSettings(low_res_epochs=2)
    (low_stage, low), (final_stage, final) = settings.stages("s3://b/augmented", on_cluster=True)

    assert (low_stage, final_stage) == (LOW_RESOLUTION, "final")
    assert (final.lr, final.epochs, final.input_size) == (DEFAULTS.lr, DEFAULTS.epochs, DEFAULTS.input_size)
    assert (low.epochs, low.input_size, low.crop, low.lr) == (2, 160, 160, settings.low_res_lr)
    assert final.loader_workers == 4 and final.workers == 2  # GPU nodes: more loader processes per worker
