// Package imagerollouttest is a fake cluster for the tests of image roll-outs: the JoinService's
// attestation config and a Ready control plane and worker.
package imagerollouttest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
)

// Cluster is a cluster whose JoinService enforces f, with the Ready nodes cp-0 (a control plane) and worker-0.
func Cluster(t *testing.T, f attestconfig.File) *k8sfake.Clientset {
	t.Helper()
	data, err := yaml.Marshal(f)
	require.NoError(t, err)
	return k8sfake.NewClientset(
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: attestconfig.ConfigMapName, Namespace: metav1.NamespaceSystem},
			Data:       map[string]string{attestconfig.FileName: string(data)},
		},
		kubeupgradetest.Node("cp-0", "v1.33.13", true),
		kubeupgradetest.Node("worker-0", "v1.33.13", false),
	)
}

// File is the attestation config the cluster's JoinService enforces now.
func File(t *testing.T, k8s kubernetes.Interface) attestconfig.File {
	t.Helper()
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(context.Background(), attestconfig.ConfigMapName, metav1.GetOptions{})
	require.NoError(t, err)
	var f attestconfig.File
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data[attestconfig.FileName]), &f))
	return f
}
