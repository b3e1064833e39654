"""A study config given as text where it means numbers, read as the types declared at each place.

Snakemake's ``--config KEY=VALUE`` reads a nested VALUE with YAML's BaseLoader, which keeps every scalar as
text: ``overrides={"uci_yacht": {"all": {"weight_steps": 2000}}}`` arrives holding the text '2000'.
:func:`typed` reads such text as the type the config's JSON schema declares at its place or, for run settings
(``overrides``, an appendix baseline's ``overrides``, a sampler's ``values``), the type the settings table
declares (:func:`onepass.settings.from_text`). Text that spells no declared type stays as it is, and the checks
report it as they would from a config file.
"""

from __future__ import annotations

from .settings import from_text, read_as

SETTINGS_REF = "#/$defs/settings"  # the schema's mapping of run settings: their types are the settings table's
SAMPLER_REF = "#/$defs/sampler"    # a sampler of one key: its `values` are values of that key
TYPES = {"integer": (int,), "number": (float, int), "boolean": (bool,), "null": (type(None),), "string": (str,),
         "object": (dict,), "array": (list,)}


def typed(config: dict, given: dict, schema: dict) -> dict:
    """``config`` with each text value at a place that ``given`` sets (the mapping ``--config`` made, merged
    into ``config``) read as the type ``schema`` declares there; every other value as it is."""
    return _walk(config, given or {}, schema, schema, None)


def _walk(value, given, node: dict, schema: dict, key: str | None):
    """``value`` with the text that ``given`` sets in it read by the schema ``node``; ``key`` is the setting
    whose sampler ``value`` lies in, if any."""
    if node.get("$ref") == SETTINGS_REF and isinstance(value, dict) and isinstance(given, dict):
        return {name: from_text(name, v) if name in given else v for name, v in value.items()}
    node = _resolved(node, schema)
    if isinstance(value, dict) and isinstance(given, dict):
        out = dict(value)
        for name in given.keys() & value.keys():
            child = node.get("properties", {}).get(name, node.get("additionalProperties"))
            child = child if isinstance(child, dict) else {}
            out[name] = _walk(value[name], given[name], child, schema,
                              name if child.get("$ref") == SAMPLER_REF else key)
        return out
    if isinstance(value, list) and isinstance(given, list) and len(value) == len(given):
        items = node.get("items", {})
        return [_walk(v, g, items, schema, key) for v, g in zip(value, given)]
    if isinstance(value, str) and value == given:
        types = _types(node)
        return read_as(types, value) if types or key is None else from_text(key, value)
    return value


def _resolved(node: dict, schema: dict) -> dict:
    """``node`` with its ``$ref`` (to the schema's ``$defs``) followed."""
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _types(node: dict) -> tuple:
    """The Python types the schema ``node`` declares (its own ``type`` and those of its ``oneOf``/``anyOf``)."""
    found = []
    for alternative in [node, *node.get("oneOf", []), *node.get("anyOf", [])]:
        names = alternative.get("type", [])
        for name in [names] if isinstance(names, str) else names:
            found.extend(TYPES[name])
    return tuple(dict.fromkeys(found))
