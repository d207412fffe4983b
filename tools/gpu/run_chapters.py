"""Execute chapters' code cells in order on the GPU machine (no Jupyter there): magics dropped,
display() -> print, widgets stubbed. Prints one line per chapter and writes a JSON summary."""

import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.show = lambda *a, **k: None

try:
    import ipywidgets  # noqa: F401
except ImportError:
    stub = types.ModuleType("ipywidgets")

    def interact(f=None, **kw):
        return f if f is not None else (lambda g: g)

    stub.interact = interact
    for name in ("FloatLogSlider", "IntSlider", "FloatSlider", "Dropdown", "fixed", "IntLogSlider", "widgets"):
        setattr(stub, name, lambda *a, **k: None)
    sys.modules["ipywidgets"] = stub

try:
    from IPython.display import display  # noqa: F401
except ImportError:
    def display(*objs, **kw):
        for o in objs:
            print(o)
    ipd = types.ModuleType("IPython.display")
    ipd.display = display
    ipd.Markdown = ipd.HTML = str
    ipd.Image = lambda *a, **k: None
    sys.modules["IPython"] = types.ModuleType("IPython")
    sys.modules["IPython.display"] = ipd


def run(path: Path) -> dict:
    nb = json.loads(path.read_text())
    os.chdir(path.parent)  # chapters read paths relative to notebooks/
    ns = {"__name__": "__main__", "display": display}
    t0 = time.perf_counter()
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
        try:
            exec(compile(src, f"{path.name}[{i}]", "exec"), ns)
        except Exception:
            return {"chapter": path.stem, "ok": False, "cell": i, "seconds": time.perf_counter() - t0,
                    "error": traceback.format_exc()[-3000:]}
        plt.close("all")
    return {"chapter": path.stem, "ok": True, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    results = []
    for p in sys.argv[2:]:
        r = run(Path(p).resolve())
        results.append(r)
        status = "ok" if r["ok"] else f"FAILED at cell {r.get('cell')}"
        print(f"{r['chapter']}: {status} in {r['seconds']:.1f} s", flush=True)
        if not r["ok"]:
            print(r["error"], flush=True)
        out.write_text(json.dumps(results, indent=1))
