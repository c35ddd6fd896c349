python -m gaccore.bindings.trl --config gac.yaml --gac_cap 0.02  # the command line overrides the YAML
