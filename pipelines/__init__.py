"""Stages in order, their configs and manifests, and the medcodec CLI."""
