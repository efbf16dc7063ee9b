"""What people read: leaderboards (terminal, Markdown, CSV, LaTeX), the statistics behind them,
figures, the HTML report, numbers reported in the literature, and the summary ``bench run`` prints.

Imports the layers below (the results frames, cards, ``bench.runner``'s outcome type); nothing
here trains or writes to the store.
"""
