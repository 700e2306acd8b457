"""The data audit: likely wrong labels, near-duplicates and outliers of a labelled image set,
from the frozen backbone's features (docs/audit.md).  ``features`` reads images into
features (model code), ``findings`` turns features into findings (scikit-learn, cleanlab),
``report`` writes them (CSV, counts, a gallery)."""
