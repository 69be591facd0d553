"""Bring your own data: `kunbench import` turns an interaction log into a dataset in the contract,
`kunbench export` writes a dataset back as a log (docs/data.md section 10)."""
