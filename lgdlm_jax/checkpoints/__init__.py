"""Our own checkpoints: Orbax save/restore, reading a workdir, the resume check, init_from."""
