"""Regenerate the README's configuration table from mqttgate.config (run after adding a setting)."""

import pathlib
import re

from mqttgate.config import settings_table

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)", re.DOTALL)

text = README.read_text()
new = BLOCK.sub(lambda m: m.group(1) + settings_table() + "\n" + m.group(2), text)
README.write_text(new)
print("README.md configuration table", "updated" if new != text else "already current")
