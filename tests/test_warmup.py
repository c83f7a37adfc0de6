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


def test_freezing_after_new_imports_leaves_the_libraries_out_of_later_collections() -> None:
    out = _run("import gc, sys\n"
               "from h2a.app.warmup import freeze_imports\n"
               "assert freeze_imports() and gc.get_freeze_count() > 0\n"
               "assert not freeze_imports()  # nothing new imported: no collection, no freeze\n"
               "frozen = gc.get_freeze_count()\n"
               "import plotly.graph_objects\n"
               "assert freeze_imports() and gc.get_freeze_count() > frozen  # a page imported a library\n"
               "left = len(gc.get_objects())\n"
               "print(frozen, left)\n")
    assert out.returncode == 0, out.stderr
    frozen, left = map(int, out.stdout.split())
    assert left < frozen / 4  # the post-run gc.collect(2) walks only what came after
