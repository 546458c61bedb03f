"""Rewrites the configuration table in README.md from the settings classes (`voicebus config`)."""

import re
import subprocess
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / "README.md"
table = subprocess.run([sys.executable, "-m", "voicebus.cli", "config"], capture_output=True, text=True,
                       check=True, cwd=readme.parent).stdout
text = readme.read_text()
new = re.sub(r"<!-- config-table:start -->.*<!-- config-table:end -->",
             lambda _: f"<!-- config-table:start -->\n{table}<!-- config-table:end -->", text, flags=re.S)
readme.write_text(new)
print("README.md configuration table updated" if new != text else "README.md configuration table unchanged")
