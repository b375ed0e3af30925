"""The feature gates kubelet knows, by the Kubernetes minor release that introduced each: what a
`--feature-gates` name is checked against (kubelet refuses a name it does not know).

Source: kubernetes/kubernetes `test/compatibility_lifecycle/reference/feature_list.md`, the table generated from
the versioned feature gate specs (`pkg/features/kube_features.go` with the generic apiserver, client-go and
component-base gates it relists) during the 1.36 development cycle; each gate's first release is the earliest of
its alpha, beta, GA or deprecated ranges ("1.0" for gates that start as GA). Added from component-base
`logs/api/v1/kube_features.go`, which kubelet registers too: ContextualLogging, LoggingAlphaOptions,
LoggingBetaOptions. A gate removed before that snapshot is not listed, so 1.33-1.35 may refuse a name those
releases still accepted; 1.37 uses the same list, as no 1.37 table was available.
"""

# name -> first minor release (1.N) in which kubelet accepts it
FIRST_RELEASE = {
    "APIResponseCompression": 8, "APIServerIdentity": 20, "APIServerTracing": 22, "APIServingWithRoutine": 30,
    "AggregatedDiscoveryRemoveBetaType": 0, "AllowDNSOnlyNodeCSR": 0,
    "AllowInsecureKubeletCertificateSigningRequests": 0, "AllowOverwriteTerminationGracePeriodSeconds": 0,
    "AllowParsingUserUIDFromCertAuth": 33, "AllowUnsafeMalformedObjectDeletion": 32,
    "AnonymousAuthConfigurableEndpoints": 31, "AnyVolumeDataSource": 18, "AtomicFIFO": 36,
    "AuthorizeNodeWithSelectors": 31, "AuthorizePodWebsocketUpgradeCreatePermission": 35,
    "AuthorizeWithSelectors": 31, "BtreeWatchCache": 32, "CBORServingAndStorage": 32,
    "CPUManagerPolicyAlphaOptions": 23, "CPUManagerPolicyBetaOptions": 23, "CPUManagerPolicyOptions": 22,
    "CRDObservedGenerationTracking": 35, "CRDValidationRatcheting": 28, "CSIServiceAccountTokenSecrets": 35,
    "CSIVolumeHealth": 21, "ChangeContainerStatusOnKubeletRestart": 0, "ClearingNominatedNodeNameAfterBinding": 34,
    "ClientsAllowCBOR": 32, "ClientsPreferCBOR": 32, "CloudControllerManagerWatchBasedRoutesReconciliation": 35,
    "CloudControllerManagerWebhook": 27, "ClusterTrustBundle": 27, "ClusterTrustBundleProjection": 29,
    "ComponentFlagz": 32, "ComponentStatusz": 32, "ConcurrentWatchObjectDecode": 31, "ConsistentListFromCache": 28,
    "ConstrainedImpersonation": 35, "ContainerCheckpoint": 25, "ContainerRestartRules": 34,
    "ContainerStopSignals": 33, "ContextualLogging": 24, "CoordinatedLeaderElection": 31,
    "CrossNamespaceVolumeDataSource": 26, "CustomCPUCFSQuotaPeriod": 12, "CustomResourceFieldSelectors": 30,
    "DRAAdminAccess": 32, "DRAConsumableCapacity": 34, "DRADeviceBindingConditions": 34, "DRADeviceTaintRules": 35,
    "DRADeviceTaints": 33, "DRAExtendedResource": 34, "DRAPartitionableDevices": 33, "DRAPrioritizedList": 33,
    "DRAResourceClaimDeviceStatus": 32, "DRASchedulerFilterTimeout": 34, "DeclarativeValidation": 33,
    "DeclarativeValidationTakeover": 33, "DeploymentReplicaSetTerminatingReplicas": 33,
    "DetectCacheInconsistency": 34, "DisableAllocatorDualWrite": 31, "DisableCPUQuotaWithExclusiveCPUs": 33,
    "DisableNodeKubeProxyVersion": 29, "DynamicResourceAllocation": 26, "EnvFiles": 34, "EventedPLEG": 26,
    "ExecProbeTimeout": 20, "ExternalServiceAccountTokenSigner": 32, "GangScheduling": 35, "GenericWorkload": 35,
    "GitRepoVolumeDriver": 0, "GracefulNodeShutdown": 20, "GracefulNodeShutdownBasedOnPodPriority": 23,
    "HPAConfigurableTolerance": 33, "HPAScaleToZero": 16, "HonorPVReclaimPolicy": 23, "HostnameOverride": 34,
    "ImageMaximumGCAge": 29, "ImageVolume": 31, "ImageVolumeWithDigest": 35, "InOrderInformers": 33,
    "InOrderInformersBatchProcess": 35, "InPlacePodLevelResourcesVerticalScaling": 35,
    "InPlacePodVerticalScaling": 27, "InPlacePodVerticalScalingAllocatedStatus": 32,
    "InPlacePodVerticalScalingExclusiveCPUs": 32, "InPlacePodVerticalScalingExclusiveMemory": 34,
    "InformerResourceVersion": 30, "JobBackoffLimitPerIndex": 28, "JobManagedBy": 30,
    "JobPodReplacementPolicy": 28, "JobSuccessPolicy": 30, "KMSv1": 0, "KubeletCgroupDriverFromCRI": 28,
    "KubeletCrashLoopBackOffMax": 32, "KubeletEnsureSecretPulledImages": 33, "KubeletFineGrainedAuthz": 32,
    "KubeletInUserNamespace": 22, "KubeletPSI": 33, "KubeletPodResourcesDynamicResources": 27,
    "KubeletPodResourcesGet": 27, "KubeletPodResourcesListUseActivePods": 0,
    "KubeletRegistrationGetOnExistsOnly": 0, "KubeletSeparateDiskGC": 29,
    "KubeletServiceAccountTokenForCredentialProviders": 33, "KubeletTracing": 25, "ListFromCacheSnapshot": 33,
    "LocalStorageCapacityIsolationFSQuotaMonitoring": 15, "LogarithmicScaleDown": 21, "LoggingAlphaOptions": 24,
    "LoggingBetaOptions": 24, "MatchLabelKeysInPodAffinity": 29, "MatchLabelKeysInPodTopologySpread": 25,
    "MatchLabelKeysInPodTopologySpreadSelectorMerge": 34, "MaxUnavailableStatefulSet": 24, "MemoryQoS": 22,
    "MultiCIDRServiceAllocator": 27, "MutableCSINodeAllocatableCount": 33, "MutablePVNodeAffinity": 35,
    "MutablePodResourcesForSuspendedJobs": 35, "MutableSchedulingDirectivesForSuspendedJobs": 35,
    "MutatingAdmissionPolicy": 32, "NFTablesProxyMode": 29, "NodeDeclaredFeatures": 35,
    "NodeInclusionPolicyInPodTopologySpread": 25, "NodeLogQuery": 27, "NodeSwap": 22,
    "NominatedNodeNameForExpectation": 34, "OpenAPIEnums": 23, "OpportunisticBatching": 35,
    "OrderedNamespaceDeletion": 30, "PodAndContainerStatsFromCRI": 23, "PodCertificateRequest": 34,
    "PodDeletionCost": 21, "PodLevelResources": 32, "PodLifecycleSleepAction": 29,
    "PodLifecycleSleepActionAllowZero": 32, "PodLogsQuerySplitStreams": 32, "PodObservedGenerationTracking": 33,
    "PodReadyToStartContainersCondition": 28, "PodSchedulingReadiness": 26, "PodTopologyLabelsAdmission": 33,
    "PortForwardWebsockets": 30, "PreferSameTrafficDistribution": 33, "PreventStaticPodAPIReferences": 34,
    "ProcMountType": 12, "QOSReserved": 11, "RecoverVolumeExpansionFailure": 23, "RecursiveReadOnlyMounts": 30,
    "ReduceDefaultCrashLoopBackOffDecay": 33, "RelaxedDNSSearchValidation": 32,
    "RelaxedEnvironmentVariableValidation": 30, "RelaxedServiceNameValidation": 34,
    "ReloadKubeletServerCertificateFile": 31, "RemoteRequestHeaderUID": 32, "ResilientWatchCacheInitialization": 31,
    "ResourceHealthStatus": 31, "ResourceHealthStatusMessage": 36, "RestartAllContainersOnContainerExits": 35,
    "RetryGenerateName": 30, "RotateKubeletServerCertificate": 7, "RuntimeClassInImageCriApi": 29,
    "SELinuxChangePolicy": 32, "SELinuxMount": 30, "SELinuxMountReadWriteOncePod": 25,
    "SchedulerAsyncAPICalls": 34, "SchedulerAsyncPreemption": 32, "SchedulerPopFromBackoffQ": 33,
    "SchedulerQueueingHints": 28, "SeparateCacheWatchRPC": 28, "SeparateTaintEvictionController": 29,
    "ServiceAccountNodeAudienceRestriction": 32, "ServiceAccountTokenJTI": 29, "ServiceAccountTokenNodeBinding": 29,
    "ServiceAccountTokenNodeBindingValidation": 29, "ServiceAccountTokenPodNodeInfo": 29, "SidecarContainers": 28,
    "SizeBasedListCostEstimate": 34, "StatefulSetSemanticRevisionComparison": 0, "StorageCapacityScoring": 33,
    "StorageNamespaceIndex": 30, "StorageVersionAPI": 20, "StorageVersionHash": 14, "StorageVersionMigrator": 30,
    "StreamingCollectionEncodingToJSON": 33, "StreamingCollectionEncodingToProtobuf": 33,
    "StrictIPCIDRValidation": 33, "StructuredAuthenticationConfiguration": 29,
    "StructuredAuthenticationConfigurationEgressSelector": 34, "StructuredAuthenticationConfigurationJWKSMetrics": 35,
    "SupplementalGroupsPolicy": 31, "SystemdWatchdog": 32, "TaintTolerationComparisonOperators": 35,
    "TokenRequestServiceAccountUIDValidation": 34, "TopologyManagerPolicyAlphaOptions": 26,
    "TopologyManagerPolicyBetaOptions": 26, "TopologyManagerPolicyOptions": 26,
    "TranslateStreamCloseWebsocketRequests": 29, "UnauthenticatedHTTP2DOSMitigation": 25,
    "UnknownVersionInteroperabilityProxy": 28, "UnlockWhileProcessingFIFO": 36,
    "UserNamespacesHostNetworkSupport": 35, "UserNamespacesSupport": 25, "VolumeAttributesClass": 29,
    "VolumeLimitScaling": 35, "WatchCacheInitializationPostStartHook": 31, "WatchList": 27, "WatchListClient": 30,
    "WinDSR": 14, "WinOverlay": 14, "WindowsCPUAndMemoryAffinity": 32, "WindowsGracefulNodeShutdown": 32,
    "WindowsHostNetwork": 26,
}

# The releases whose names are checked; earlier ones keep the SELinux gates' own check only.
CHECKED_MINORS = range(33, 38)


def known_in(minor: int) -> list[str]:
    """The gate names kubelet 1.`minor` accepts."""
    return [name for name, first in FIRST_RELEASE.items() if first <= minor]
