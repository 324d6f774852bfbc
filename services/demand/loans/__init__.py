"""The loan book of the demand service: every loan disbursed on a lead, its maturity, and the
renewal warning sent before it matures (the pure core in :mod:`.domain`, storage in :mod:`.store`,
the use cases in :mod:`.service`)."""
