"""Reading a user's YAML file (a grid, a model registry): data only, within bounds.

``yaml.safe_load`` refuses tags that construct objects or run code, but not a document that expands
without end through aliases (a 500-byte "billion laughs" takes minutes and gigabytes); the loader
here stops at a size, a number of values after expansion and a depth, each with a clear error.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from uqflow.errors import UqflowError

#: bounds on a user's YAML file (grids and model registries are a few hundred bytes of plain data)
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_NODES = 10_000  # values after aliases are expanded, so an alias bomb stops here
MAX_YAML_DEPTH = 50


class _YamlTooLarge(Exception):
    """A YAML document past one of the bounds: ``(what is wrong, the way out)``."""

    def __init__(self, problem: str, way_out: str = ", so write each value out (a few anchors and aliases for "
                 "shared settings are fine)"):
        super().__init__(problem, way_out)


@functools.lru_cache(maxsize=1)
def _bounded_loader():
    """``safe_load``'s loader, bounded: composing stops past MAX_YAML_NODES nodes or MAX_YAML_DEPTH
    levels, and a document whose aliases expand past MAX_YAML_NODES values is refused before a
    single value is constructed (so an alias bomb costs milliseconds, not gigabytes)."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self._composed = 0
            self._depth = 0

        def compose_node(self, parent, index):
            self._composed += 1
            self._depth += 1
            try:
                if self._composed > MAX_YAML_NODES:
                    raise _YamlTooLarge(f"too many YAML aliases or nodes (more than {MAX_YAML_NODES:,})")
                if self._depth > MAX_YAML_DEPTH:
                    raise _YamlTooLarge(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)", " a few levels deep")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return self.construct_document(node)

    return BoundedSafeLoader


def _check_expanded_size(root: Any) -> None:
    """Refuse a composed YAML graph that, once every alias is expanded (as ``construct_document``
    would), holds more than MAX_YAML_NODES values or MAX_YAML_BYTES characters of text, or that
    holds a recursive alias (an infinite value). Each node is sized once (aliases share their
    node), iteratively, so the check itself is cheap."""
    import yaml

    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once expanded
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()  # the nodes being sized: the current node's ancestors
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        if children_done:
            open_.discard(key)
            values = 1 + sum(size[id(c)][0] for c in children)
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            chars = own + sum(size[id(c)][1] for c in children)
            if values > MAX_YAML_NODES:
                raise _YamlTooLarge(f"too many YAML aliases or nodes (more than {MAX_YAML_NODES:,})")
            if chars > MAX_YAML_BYTES:
                raise _YamlTooLarge(f"YAML aliases expand to more than {MAX_YAML_BYTES:,} characters of text")
            size[key] = (values, chars)
            continue
        if key in size:
            continue
        if key in open_:  # an alias inside its own anchor: the value would never end
            raise _YamlTooLarge("a YAML alias refers to the value that contains it (a recursive value)",
                                ", so an alias may only repeat a value defined before it")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def read_yaml(path: Path, kind: str, error: type[UqflowError]) -> Any:
    """The data in a user's YAML file (a grid or a model registry), read with ``safe_load``'s
    constructors: a tag that would construct an object or run code (``!!python/object``,
    ``!!python/name``, ...) is refused, as is a file past MAX_YAML_BYTES, a document past
    MAX_YAML_NODES values once its aliases are expanded (an alias bomb) or nested past
    MAX_YAML_DEPTH levels; every problem is an ``error`` naming the file."""
    import yaml

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # never more, whatever the file (or device) holds
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: larger than {MAX_YAML_BYTES // 1024 ** 2} MiB; a {kind} is a short list of names "
                    "and settings, so check that this is the file you meant")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass
    except _YamlTooLarge as e:
        problem, way_out = e.args
        raise error(f"{path}: {problem}; {kind}s are plain data{way_out}") from None
    except RecursionError:  # the bounds above stop nesting first; this is the backstop
        raise error(f"{path}: nested too deeply; {kind}s are plain data a few levels deep") from None
    except yaml.constructor.ConstructorError as e:
        where = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
        raise error(f"{path}{where}: not valid YAML for a {kind} ({e.problem}): {kind}s are data, so tags that "
                    "construct objects or run code are refused") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
