package services

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// restClientGetter gives Helm's Kubernetes client the cluster of a kubeconfig held in memory (Helm's own
// getter reads files and flags), with namespace as the default namespace.
type restClientGetter struct {
	config clientcmd.ClientConfig
}

func newRESTClientGetter(kubeconfig []byte, namespace string) (*restClientGetter, error) {
	raw, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading the kubeconfig: %w", err)
	}
	current := raw.Contexts[raw.CurrentContext]
	if current == nil {
		return nil, fmt.Errorf("the kubeconfig has no current context %q", raw.CurrentContext)
	}
	overrides := &clientcmd.ConfigOverrides{Context: *current}
	overrides.Context.Namespace = namespace
	return &restClientGetter{config: clientcmd.NewDefaultClientConfig(*raw, overrides)}, nil
}

func (g *restClientGetter) ToRESTConfig() (*rest.Config, error) {
	return g.config.ClientConfig()
}

func (g *restClientGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	cfg, err := g.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return memory.NewMemCacheClient(dc), nil
}

func (g *restClientGetter) ToRESTMapper() (meta.RESTMapper, error) {
	dc, err := g.ToDiscoveryClient()
	if err != nil {
		return nil, err
	}
	return restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(dc), dc, nil), nil
}

func (g *restClientGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return g.config
}
