"""Config validation: every bad key, type or value fails before training, naming the key."""

import socket

import pytest

from fedcore.config import address_port
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.strategies.fedprox import FedProxConfig
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.processes import make_certs, run_fedcore, start_server


def test_default_config_parses_into_typed_sections():
    experiment, options = parse_experiment(composed())
    assert experiment.dataset.name == "mnist" and experiment.partition.scheme == "dirichlet"
    assert options.clients_per_round == experiment.clients_per_round == 10
    assert options.training.local_steps == experiment.training.local_steps


def test_issue_example_overrides_compose():
    experiment, options = parse_experiment(
        composed("strategy=fedprox", "dataset=fmnist", "partition.alpha=0.1", "rounds=50")
    )
    assert isinstance(options, FedProxConfig) and options.mu == 0.01
    assert experiment.partition.alpha == 0.1 and experiment.rounds == 50
    assert experiment.dataset.name == "fmnist"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["partition.alpha=0"], "partition.alpha: must be > 0, got 0.0"),
        (["partition.alpha=-1"], "partition.alpha: must be > 0"),
        (["clients_per_round=200"], "clients_per_round: must be <= num_clients (100), got 200"),
        (["+bogus=1"], "bogus: unknown key"),
        (["+partition.bogus=1"], "partition.bogus: unknown key"),
        (["+strategy.bogus=1"], "strategy.bogus: unknown key"),
        (["rounds=abc"], "rounds: expected int, got 'abc'"),
        (["rounds=0"], "rounds: must be >= 1"),
        (["strategy=fedprox", "strategy.mu=-0.1"], "strategy.mu: must be >= 0"),
        (["strategy=fedprox", "strategy.mu=abc"], "strategy.mu: expected float, got 'abc'"),
        (
            ["strategy=fedadam", "strategy.server_step.beta1=1.5"],
            "strategy.server_step.beta1: must be in [0, 1)",
        ),
        (
            ["strategy=fedbuff", "strategy.server_step.name=nesterov"],
            "strategy.server_step.name: must be one of",
        ),
        (["training.lr=inf"], "training.lr: must be finite and > 0"),
        (
            ["training.transforms=[{max_norm: 1}]"],
            "training.transforms[0].name: must name an update transform",
        ),
        (
            ["training.transforms=[{name: clip, max_norm: nan}]"],
            "training.transforms[0].max_norm: must be a finite number",
        ),
        (
            ["strategy=fedasync", "strategy.staleness.function=linear"],
            "strategy.staleness.function",
        ),
        (["strategy.name=fedmagic"], "strategy.name: must be one of"),
        (["partition.scheme=random"], "partition.scheme: must be one of"),
        (["training.lr=0"], "training.lr: must be finite and > 0"),
        (["seed=-1"], "seed: must be in [0, 2^63), got -1"),
        (["deployment.address=127.0.0.1:99999"], "deployment.address: must be HOST:PORT"),
        (["deployment.address=localhost"], "deployment.address: must be HOST:PORT"),
        (["deployment.address=::1:80"], "deployment.address: must be HOST:PORT"),
        (["deployment.upload_timeout=inf"], "deployment.upload_timeout: must be finite"),
        (["training.batch_size=0"], "training.batch_size: must be >= 1"),
        (["client_profiles.availability=0"], "client_profiles.availability: must be in (0, 1]"),
        (["client_profiles.speed=tiers"], "client_profiles.tiers: must list at least one tier"),
        (["output.progress=loud"], "output.progress: must be one of"),
        (["+strategy.clients_per_round=3"], "strategy.clients_per_round: set it at the top level"),
    ],
)
def test_invalid_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        parse_experiment(composed(*overrides))
    assert message in str(error.value)


@pytest.mark.parametrize("override", ["bogus=1", "+bogus=1"])
def test_new_keys_are_refused_with_or_without_plus(override):
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        composed(override)


def test_cli_rejects_bad_value_before_training(tmp_path):
    result = run_fedcore("sim", *FAST, "partition.alpha=-0.5", cwd=tmp_path)
    assert result.returncode == 2
    assert "partition.alpha: must be > 0, got -0.5" in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/metrics.jsonl")), "no training may have started"


def test_cli_multirun_sweeps(tmp_path):
    result = run_fedcore("sim", "-m", *FAST, "rounds=1", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = sorted(tmp_path.glob("multirun/*/*/*/summary.json"))
    assert len(runs) == 2


def test_a_model_that_cannot_run_on_the_data_is_a_config_error():
    overrides = ["model=lenet5", "dataset=heart", "partition=natural", "num_clients=4"]
    with pytest.raises(ConfigError, match=r"model\.name: lenet5 cannot run on this dataset"):
        make_experiment(composed(*overrides, "clients_per_round=2"))


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "[::1]:0", "server.example:443"])
def test_addresses_with_a_port_are_accepted(address):
    assert address_port(address) is not None
    parse_experiment(composed(f"deployment.address='{address}'"))


def test_a_port_in_use_ends_the_server_with_one_line(tmp_path):
    make_certs(tmp_path, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(
            tmp_path, "num_clients=1", "clients_per_round=1", f"deployment.address=127.0.0.1:{port}"
        )
        output = server.communicate(timeout=120)[0]
    assert server.returncode == 2, output
    assert f"fedcore: deployment.address: cannot listen on 127.0.0.1:{port} (in use?)" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (["rouns=5"], "fedcore: rouns: unknown key; did you mean rounds? (known keys: "),
        (["+rouns=5"], "fedcore: rouns: unknown key; did you mean rounds? (known keys: "),
        (["training.lrr=1"], "fedcore: training.lrr: unknown key; did you mean training.lr?"),
        (
            ["strategy=fedamd", "strategy.init_rond=true"],
            "fedcore: strategy.init_rond: unknown key; did you mean strategy.init_round?",
        ),
        (
            ["strategy=fedamdd"],
            "fedcore: strategy: no preset 'fedamdd'; did you mean strategy=fedamd? (presets: ",
        ),
        (["-m", "strategy=fedavg,fedprx"], "fedcore: strategy: no preset 'fedprx'; did you mean"),
    ],
)
def test_a_typo_is_one_line_with_a_suggestion_and_exit_2(tmp_path, arguments, line):
    result = run_fedcore("sim", *arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_command_line_hydra_cannot_parse_is_a_usage_error(tmp_path):
    result = run_fedcore("sim", "rounds=[", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_fedcore_prints_its_version():
    from fedcore import __version__

    result = run_fedcore("--version", cwd=None)
    assert result.returncode == 0 and result.stdout == f"fedcore {__version__}\n"


def test_a_server_address_without_a_port_is_one_line_and_exit_2(tmp_path):
    result = run_fedcore("server", "deployment.address=localhost", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "fedcore: deployment.address: must be HOST:PORT with a port in [0, 65535] (0: any free "
        "port), got 'localhost'\n"
    )
