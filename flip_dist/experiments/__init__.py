"""The paper's experiments from one spec: a grid of cells (spec, grid), run resumably on Ray
(runner), rendered as the paper's tables and figures (report)."""
