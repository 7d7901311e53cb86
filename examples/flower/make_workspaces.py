"""Write the example's four workspaces: three sites (BBC News slices, as in examples/three-sites) and a
coordinator, with the small training settings of examples/three-sites/run.sh written into each fedbip.yaml
(a Flower run cannot pass `--set` to the sites).

    python examples/flower/make_workspaces.py [/tmp/fedbip-flower]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TRAINING = {"model": {"max_length": 64},
            "training": {"epochs": 2.0, "batch_size": 8, "learning_rate": 1.0e-3, "head_learning_rate": 1.0e-2}}


def main(root: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_data", HERE.parent / "three-sites" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    make_data.main(root)
    for folder in [*make_data.SITES, "coordinator"]:
        path = root / folder / "fedbip.yaml"
        cfg = yaml.safe_load(path.read_text())
        for section, values in TRAINING.items():
            cfg[section].update(values)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {', '.join(str(root / s) for s in [*make_data.SITES, 'coordinator'])}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fedbip-flower"))
