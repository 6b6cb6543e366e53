def add_lt_config(cfg): pass
