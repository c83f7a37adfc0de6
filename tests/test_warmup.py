"""The app's background import warm-up: once per server process, and harmless when a module is missing."""

import subprocess
import sys

from tests.browser import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_fresh_process_imports_torch_in_one_background_thread() -> None:
    out = _run("import sys, threading\n"
               "from h2a.app.warmup import warm_imports\n"
               "assert 'torch' not in sys.modules\n"
               "t = warm_imports()\n"
               "assert warm_imports() is t and t.name == 'h2a-warm-imports' and t.daemon\n"
               "t.join(240)\n"
               "assert 'torch' in sys.modules and 'plotly.graph_objects' in sys.modules\n"
               "print('ok', threading.active_count())\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "1"]  # only the main thread is left: the warm-up ended


def test_a_missing_module_is_logged_and_the_rest_still_load() -> None:
    out = _run("import sys\n"
               "from h2a.app.warmup import warm_imports\n"
               "warm_imports(('h2a_no_such_module', 'json.decoder')).join(60)\n"
               "assert 'json.decoder' in sys.modules\n")
    assert out.returncode == 0, out.stderr
    assert "warm-up import of h2a_no_such_module failed" in out.stderr
