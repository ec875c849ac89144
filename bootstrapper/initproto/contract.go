package initproto

// Port is the bootstrapper's Init API port, served on a node until it joined or was initialized.
const Port = 9000
