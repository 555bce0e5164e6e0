"""Everything an experiment needs before the first event: validated config, data, model, strategy.

Simulation and deployment both start here, so a config means the same thing in either.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedcore.clients.per_example import clipping_problem
from fedcore.clients.plugins import load_plugins
from fedcore.config import ExperimentConfig
from fedcore.federation import Federation, make_federation, model_builder, server_data
from fedcore.params import ModelLayout, module_vectors
from fedcore.privacy import noise_norm_bound
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.strategies.base import GlobalModel, ServerResources, Strategy
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.registry import STRATEGIES, build_strategy
from fedcore.typed_config import ConfigError, build


def parse_experiment(data: dict[str, Any]) -> tuple[ExperimentConfig, Any]:
    """Validate a composed config (after importing its plug-ins); return it with the
    strategy's typed options.

    `clients_per_round` and `training` are set once at the top level and handed to the
    strategy's options, so a sweep over strategies keeps them fixed.
    """
    experiment = build(ExperimentConfig, data)
    load_plugins(experiment.plugins)
    options = dict(experiment.strategy)
    name = options.pop("name", None)
    if name not in STRATEGIES:
        raise ConfigError(f"strategy.name: must be one of {sorted(STRATEGIES)}, got {name!r}")
    config_type, _ = STRATEGIES[name]
    known = set(config_type.__dataclass_fields__)
    shared = {"clients_per_round": experiment.clients_per_round, "training": experiment.training}
    for key in shared:
        if key in options:
            raise ConfigError(
                f"strategy.{key}: set it at the top level ({key}=...), not per strategy"
            )
    options.update({k: v for k, v in shared.items() if k in known})
    return experiment, build(config_type, options, "strategy")


@dataclass
class Experiment:
    """A validated config with its federation, model constructor and layout, and strategy."""

    config: ExperimentConfig
    federation: Federation
    build_model: Callable[[], nn.Module]
    layout: ModelLayout
    strategy: Strategy

    def initial_model(self) -> GlobalModel:
        """Version 0, built from the config's seed: the same model on every call. Built on
        demand, so that nothing holds it once the run has moved past it."""
        torch.manual_seed(self.config.seed)
        params, buffers = module_vectors(self.build_model(), self.layout)
        return GlobalModel(params, buffers, 0)


def checked_layout(
    builder: Callable[[], nn.Module], sample: torch.Tensor, name: str
) -> ModelLayout:
    """The model's layout, after building it and running `sample` (a batch of one zero example)
    through it: a model that does not fit the data is a ConfigError. It runs on the CPU, not
    the meta device, whose first use imports a second of torch's Python decompositions."""
    try:
        module = builder()
        with torch.no_grad():
            module(torch.zeros_like(sample))
    except (ValueError, RuntimeError, TypeError, IndexError) as error:
        raise ConfigError(f"model.name: {name} cannot run on this dataset: {error}") from None
    return ModelLayout.of(module)


def check_privacy(experiment: Experiment) -> None:
    """What the privacy mode needs of the model, the data, the strategy and validation; a
    ConfigError names the key that cannot hold."""
    config, layout = experiment.config, experiment.layout
    privacy = config.privacy
    if privacy.mode == "local":
        _check_local_privacy(config, layout)
    elif privacy.mode == "dpsgd":
        _check_dpsgd(experiment)
    elif privacy.mode == "central":
        _check_central(experiment)
    if privacy.mode != "none" and privacy.budget:
        smallest = min(len(part) for part in experiment.federation.train_parts)
        first = PrivacyAccountant(config).next_epsilon(0, smallest)
        if first > privacy.budget:
            raise ConfigError(
                f"privacy.budget: {privacy.budget:g} does not cover one training task of the "
                f"client with the fewest examples ({smallest}), which spends ε {first:.4g}"
            )


def _check_local_privacy(config: ExperimentConfig, layout: ModelLayout) -> None:
    """No buffers (they would travel unnoised), and a delta norm bound that an honest noised
    update stays under."""
    privacy = config.privacy
    if layout.buffers.numel:
        raise ConfigError(
            f"privacy.mode: local cannot protect model {config.model.name}'s buffers "
            f"({layout.buffers.numel} values, e.g. BatchNorm statistics), which travel unnoised"
        )
    bound = config.validation.max_delta_norm
    sigma = privacy.multiplier() * 2 * privacy.max_norm
    honest = privacy.max_norm + noise_norm_bound(sigma, layout.params.numel)
    if bound and bound < honest:
        raise ConfigError(
            f"validation.max_delta_norm: {bound} would refuse honest updates under "
            f"privacy.mode=local: clipped to {privacy.max_norm} with noise of std {sigma:.4g} "
            f"over {layout.params.numel} parameters, their norm reaches {honest:.4g}"
        )


def _check_central(experiment: Experiment) -> None:
    """A strategy whose new model is the old one plus lr times the uniform mean of the
    updates, so that the noise on it is the noise on that mean; opacus for the accountant."""
    strategy = experiment.strategy
    if not isinstance(strategy, FedAvg) or strategy.step.config.name != "plain":
        raise ConfigError(
            f"privacy.mode: central needs FedAvg or FedProx with the plain server step (the "
            f"noised mean must be all that moves the model); strategy "
            f"{experiment.config.strategy['name']} is not"
        )
    if strategy.weighting != "uniform":
        raise ConfigError(
            "strategy.weighting: must be uniform under privacy.mode=central: weighting by "
            "example counts lets one client move the mean by more than max_norm / k"
        )
    _require_opacus("central")


def _require_opacus(mode: str) -> None:
    """A ConfigError saying how to get opacus, when it is missing."""
    if importlib.util.find_spec("opacus") is None:
        raise ConfigError(f"privacy.mode: {mode} needs opacus: pip install 'fedcore[privacy]'")


def _check_dpsgd(experiment: Experiment) -> None:
    """Opacus present and able to train the model, a strategy that trains with the configured
    technique, and δ below one over the smallest client's example count."""
    config = experiment.config
    strategy = experiment.strategy
    if strategy.own_techniques:
        raise ConfigError(
            f"privacy.mode: dpsgd trains with the dpsgd technique, but strategy "
            f"{strategy.name} sends its own ({', '.join(strategy.own_techniques)}), which "
            "would train without the privacy"
        )
    _require_opacus("dpsgd")
    problem = clipping_problem(experiment.build_model())
    if problem:
        raise ConfigError(f"privacy.mode: dpsgd cannot train model {config.model.name}: {problem}")
    smallest = min(len(part) for part in experiment.federation.train_parts)
    if config.privacy.delta >= 1 / smallest:
        raise ConfigError(
            f"privacy.delta: must be below 1 / the smallest client's example count "
            f"({1 / smallest:.3g}), got {config.privacy.delta}"
        )


def make_experiment(data: dict[str, Any]) -> Experiment:
    """Build an experiment from a composed config dict (validates first, loads data second).
    This process's torch threads are set to the config's before any tensor work, so that a
    process forked later for simulated clients inherits no thread pool."""
    config, strategy_options = parse_experiment(data)
    torch.set_num_threads(config.threads)
    federation = make_federation(config)
    builder = model_builder(config, federation.dataset)
    sample = federation.dataset.train.x[:1]
    layout = checked_layout(builder, sample, config.model.name)
    strategy = build_strategy(str(config.strategy["name"]), strategy_options, config.seed)
    strategy.bind_resources(ServerResources(builder, layout, server_data(config, federation)))
    experiment = Experiment(config, federation, builder, layout, strategy)
    check_privacy(experiment)
    return experiment
