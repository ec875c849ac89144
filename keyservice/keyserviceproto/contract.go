package keyserviceproto

const (
	// DaemonSetName is the KeyService's DaemonSet (and container) in kube-system.
	DaemonSetName = "keyservice"
	// KMSURIFlag is the KeyService's flag that names its key backend (package kmsuri); `constellation
	// status` reads it from the DaemonSet.
	KMSURIFlag = "--kms-uri="
)
