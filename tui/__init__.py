"""The operator's console (`bft-anchor tui`): a Textual app over one signing appliance."""
