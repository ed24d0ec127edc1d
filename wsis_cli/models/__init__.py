"""nn.Modules and their builders. torch is imported here (and in engine/, pseudo/prm.py,
pseudo/ccgr.py) only, so verbs that do not run a model start without it."""
