"""Fleets: `provision up|plan|status` over an inventory of many hosts, in parallel."""
