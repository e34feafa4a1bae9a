"""The test suite executes these notebooks (nbval) with the smoke profile: seconds a run instead of the demo's
minutes. The committed outputs are the demo's; nbval compares only what does not depend on training (class lists,
table headers and row names), with every number masked by nbval_sanitize.cfg."""

import os

os.environ.setdefault("OSHP_NOTEBOOK_PROFILE", "smoke")
