package recoverproto

// Port is the bootstrapper's Recovery API port, served on a restarted node that cannot rejoin.
const Port = 9999
