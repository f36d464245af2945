

def test_the_notebook_example_runs(tmp_path, root):
    import os
    import subprocess
    import sys

    figure = tmp_path / "example.png"
    environment = dict(os.environ, PYTHONPATH=str(root / "python"), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(root / "python/examples/notebook.py"), "--quick", "--figure", str(figure),
                           "--workdir", str(tmp_path / "work")], cwd=root, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UsageError: windw=3: not a parameter of h2o" in done.stdout and "suggestion 'window'" in done.stdout
    assert "TraceError: no-such-trace.h5: no such file" in done.stdout
    assert (tmp_path / "work/sweep.csv").exists()
