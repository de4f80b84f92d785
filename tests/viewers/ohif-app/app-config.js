/** OHIF Viewer configuration for the browser test (tests/viewers/test_ohif_app.py) and for a
 * radiologist's look at our objects (docs/sr-content.md, "OHIF"). It replaces dist/app-config.js of
 * @ohif/app: one data source, Orthanc's DICOMweb (PS3.18 QIDO-RS / WADO-RS), reached on the same
 * origin as the viewer (/dicom-web is forwarded to Orthanc by the server that serves dist/), so
 * nothing is requested from any other host. */
window.config = {
  name: 'medrega-gateway test: Orthanc DICOMweb on loopback',
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  // No onboarding tour over the first image.
  customizationService: { 'ohif.tours': { $set: [] } },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (loopback)',
        name: 'orthanc',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
