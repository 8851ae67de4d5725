"""Make ultralytics fully offline. Call before the first ``import ultralytics``.

Ultralytics otherwise downloads fonts, checks for updates, auto-installs packages and syncs
settings: none of that may happen in a hospital network (or on our build machines).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def configure(runtime_dir: Path) -> Path:
    config_dir = Path(runtime_dir) / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "false")
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font = _dejavu()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if font and not target.exists():
            shutil.copyfile(font, target)
    from ultralytics.utils import SETTINGS

    # ultralytics' SettingsManager.update has no annotations
    SETTINGS.update({"sync": False, "hub": False} if "hub" in SETTINGS else {"sync": False})  # type: ignore[no-untyped-call]
    return config_dir


def _dejavu() -> Path | None:
    import matplotlib

    candidates = [Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf",
                  Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    return next((p for p in candidates if p.exists()), None)
