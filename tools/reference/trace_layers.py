"""The recorded layers a NumPy re-derivation replays: every layer with q and k, or those --layers names."""


def qk_layers(f, layers_option):
    """(layer index, HDF5 group) of each layer of the open trace `f` that holds q and k, in layer
    order; `layers_option` is the scripts' comma-separated --layers value (None: all)."""
    names = sorted(f["layers"].keys(), key=int)
    if layers_option:
        wanted = {int(x) for x in layers_option.split(",")}
        names = [n for n in names if int(n) in wanted]
    for name in names:
        group = f["layers"][name]
        if "q" in group and "k" in group:
            yield int(name), group
