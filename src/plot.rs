//! Small PNG line plots.
