"""Everything that trains: architecture specs, the network builder, data, the LightningModule."""
