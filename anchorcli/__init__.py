"""`bft-anchor`, the one command line: dispatches to the appliance, the node and the console."""
