"""Hydra experiment configs, shipped as package data so `fedcore sim` finds them when installed."""
