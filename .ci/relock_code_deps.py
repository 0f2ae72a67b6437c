"""Maintainers only: relock the code and params deps of the stages whose code changed, keeping every out's hash.

What `dvc commit <stage>` does for those stages, in a tree that does not hold the outputs (a fresh clone): for
every stage with a changed dep outside data/, the deps are hashed again and dvc.lock is rewritten; outs and
cmds stay as recorded (the script checks nothing about them). Use it ONLY when the change is shown not to alter
what those stages compute (e.g. the same training, old code vs new, bit for bit); otherwise rerun the stages.

    .venv/bin/python .ci/relock_code_deps.py      # then review `git diff dvc.lock`
"""

from dvc.repo import Repo

repo = Repo(".")
with repo.lock:
    for stage in repo.index.stages:
        if stage.is_data_source or not stage.cmd:
            continue
        code = [d for d in stage.deps if not str(d.def_path).startswith("data/")]
        changed = {str(d.def_path): d.status() for d in code if d.status()}
        if changed:
            for d in code:
                d.save()
            stage.dump(update_pipeline=False)
            print(stage.addressing, sorted(changed))
