"""Import-graph numbers of gaccore: modules, internal import edges, edges
pointing up a layer, two-way pairs, and the longest classes and functions.

Run on the package as installed (kernels/, bindings/ and demo/ inside gaccore/):
    pkg=$(mktemp -d) && cp -r gaccore "$pkg/" && cp -r kernels "$pkg/gaccore/kernels" \
      && cp -r bindings "$pkg/gaccore/bindings" && cp -r demo "$pkg/gaccore/demo" && (cd "$pkg" \
      && PYTHONPATH="$pkg" "$OLDPWD/.venv/bin/python" -P "$OLDPWD/.ci/import_graph.py" "$pkg")
"""

import ast
import pathlib
import sys

import grimp

LAYERS = ["gaccore.demo", "gaccore.bindings", "gaccore.kernels"]  # top to bottom; the rest is the core


def layer(module):
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return len(LAYERS) - rank
    return 0


graph = grimp.build_graph("gaccore", cache_dir=None, exclude_type_checking_imports=True)  # as the lint counts them
modules = sorted(m for m in graph.modules if m.startswith("gaccore"))
edges = [(a, b) for a in modules for b in graph.find_modules_directly_imported_by(a) if b.startswith("gaccore")]
up = [(a, b) for a, b in edges if layer(b) > layer(a)]
print(f"modules {len(modules)}  internal import edges {len(edges)}  edges pointing up a layer {len(up)}")
for a, b in up:
    print("  up:", a, "->", b)
cycles = [(a, b) for a, b in edges if (b, a) in set(edges)]
print(f"two-way module pairs {len(cycles) // 2}")
units = []
root = pathlib.Path(sys.argv[1])
for path in root.rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            units.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
units.sort(reverse=True)
print("longest units:", ", ".join(f"{n} {name}" for n, name in units[:6]))
