"""Overrides are checked against the typed config before Hydra composes them, and runs are
named by them (`fedcore/overrides.py`, `fedcore/cli.py`)."""

import pytest

from fedcore.cli import run_namer
from fedcore.overrides import check_overrides, presets
from fedcore.typed_config import ConfigError


@pytest.mark.parametrize(
    "arguments",
    [
        ["rounds=5", "strategy=fedprox", "strategy.mu=0.1", "+experiment=heart"],
        ["-m", "seed=0,1", "strategy=fedavg,fedadam", "strategy.server_step.lr=0.1"],
        ["hydra.run.dir=/tmp/x", "hydra/launcher=basic", "dataset.options.min_chars=10"],
        ["training.transforms=[{name: topk, fraction: 0.1}]", "~plugins", "--cfg", "job"],
        ["strategy.name=mine", "+strategy.anything=1"],  # a plug-in's: checked once loaded
    ],
)
def test_known_keys_presets_and_free_form_entries_pass(arguments):
    check_overrides(arguments)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["partition.alhpa=0.1"], "partition.alhpa: unknown key; did you mean partition.alpha?"),
        (["deployment.adress=x:1"], "did you mean deployment.address?"),
        (["strategy.mu=0.1"], "strategy.mu: unknown key"),  # the default strategy is fedavg
        (["-m", "strategy=fedprox,fedavg", "strategy.mu=0.1"], "strategy.mu: unknown key"),
        (["+experiment=hearts"], "experiment: no preset 'hearts'; did you mean experiment=heart?"),
        (["dataset=cifar"], "dataset: no preset 'cifar' (presets: fmnist, heart, mnist, "),
    ],
)
def test_unknown_keys_and_presets_name_the_closest(arguments, message):
    with pytest.raises(ConfigError) as error:
        check_overrides(arguments)
    assert message in str(error.value)


def test_presets_are_the_packaged_yaml_files():
    assert "fedavg" in presets("strategy") and "heart" in presets("experiment")


def test_a_sweep_names_its_runs_by_what_it_varies():
    suffix = run_namer(["-m", "rounds=5", "seed=0,1", "strategy=fedavg,fedprox"])
    assert suffix(["rounds=5", "seed=1", "strategy=fedprox"]) == "_seed=1,strategy=fedprox"
    single = run_namer(["rounds=5", "deployment.certs=/tmp/certs"])
    assert single(["rounds=5", "deployment.certs=/tmp/certs"]) == (
        "_rounds=5,deployment.certs=_tmp_certs"
    )
    assert single([]) == ""
    assert len(single([f"seed={'9' * 300}"])) == 121
