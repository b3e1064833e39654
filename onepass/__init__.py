"""onepass: one-pass gradient-based hyperparameter optimisation by implicit differentiation.

Reimplements Clarke, Oldewage & Hernandez-Lobato, "Scalable One-Pass Optimisation of
High-Dimensional Weight-Update Hyperparameters by Implicit Differentiation" (ICLR 2022).
"""

__version__ = "0.1.0"
