"""Image and report search: radiology reports to entities linked to ICD-10-CM (:mod:`.reports`, with the
findings' wordings and codes in :mod:`.lexicon`)."""
