"""What the notebooks call, in named parts; a notebook holds parameters, calls and prose.

    kdlib.notebook.grids     the configs: smoke settings, the embedded protocol, grids, output folders
    kdlib.notebook.tables    results as data frames and tables
    kdlib.notebook.claims    paired differences, verdicts and the claims files
    kdlib.notebook.figures   composite figures the notebooks share (a paper's main table)

`from kdlib import notebook as knb` reaches every name of the parts (`knb.grid`, `knb.paired_table`, ...).
Nothing here loads, samples or trains a model: measurements that do are `kdlib.measure`'s, runs `kdlib.experiments`'.
"""
from kdlib.notebook.claims import *  # noqa: F401,F403
from kdlib.notebook.claims import _bucket, _bucketed_items, _difference_row  # noqa: F401
from kdlib.notebook.figures import *  # noqa: F401,F403
from kdlib.notebook.grids import *  # noqa: F401,F403
from kdlib.notebook.tables import *  # noqa: F401,F403
