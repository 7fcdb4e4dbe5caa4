"""The notebooks' toolkit, public like `kdlib` itself: what the notebooks call, in named parts; a notebook
holds parameters, calls and prose, and a cell you adapt calls only these names and kdlib's API.

    kdlib.notebook.grids     the configs: smoke settings, the embedded protocol, grids, output folders
    kdlib.notebook.tables    results as data frames and tables
    kdlib.notebook.claims    paired differences, verdicts and the claims files
    kdlib.notebook.figures   composite figures the notebooks share (a paper's main table)
    kdlib.notebook.plots     the house style, figures and table files
    kdlib.notebook.measure   measurements that load, sample or train models (workload, mechanisms, samples)
    and, from the runs:      run_grid, teacher_config, sft_init_recipe, evaluate, load_rows, task_metric

`from kdlib import notebook as knb` reaches every name of the four parts (`knb.grid`, `knb.paired_table`, ...);
`from kdlib.notebook import measure, plots, run_grid` the rest.
"""
from kdlib._lazy import lazy_attributes
from kdlib.notebook.claims import *  # noqa: F401,F403
from kdlib.notebook.claims import _bucket, _bucketed_items, _difference_row  # noqa: F401
from kdlib.notebook.figures import *  # noqa: F401,F403
from kdlib.notebook.grids import *  # noqa: F401,F403
from kdlib.notebook.tables import *  # noqa: F401,F403

_FROM_RUNS = {"run_grid": "kdlib._experiments", "teacher_config": "kdlib._recipes", "sft_init_recipe": "kdlib._recipes",
              "evaluate": "kdlib._evaluate", "load_rows": "kdlib._rows", "task_metric": "kdlib._rows"}


__getattr__ = lazy_attributes(__name__, _FROM_RUNS)
