// Runs OHIF's own SR code on DICOM files, headless, and prints what it made of them as JSON.
//
//   node load_sr.mjs SR.json|SR.dcm [...] -- IMAGE.json|IMAGE.dcm [...]
//
// Each instance is read the way OHIF reads it (see readInstance: DICOMweb JSON or a local Part 10
// file, naturalized by dcmjs), put in @ohif/core's DicomMetadataStore, and served to
// Cornerstone by @ohif/core's MetadataProvider, as in the viewer. For each SR it then runs
//   1. the SOP Class Handler of @ohif/extension-cornerstone-dicom-sr (getDisplaySetsFromSeries and
//      displaySet.load()): the SR viewport's measurements, their overlay labels and the images
//      they were placed on;
//   2. hydrateStructuredReport of the same extension, which calls @cornerstonejs/adapters
//      MeasurementReport.generateToolState: the "track" step that turns each region into a
//      measurement of the measurement service.
// Only services OHIF's React app would provide are stubbed (display sets of the images, the data
// source's image ids, the measurement service, customizations): they record what the code asks.
// Driven by tests/viewers/test_ohif_sr.py.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import Module from 'node:module';
import { JSDOM } from 'jsdom';

// @ohif/core binds hotkeys (mousetrap) and reads window/self when it loads.
const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/' });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.self = globalThis;
// Events dispatched on the document must be jsdom's own (Node has its own Event classes).
globalThis.Event = dom.window.Event;
globalThis.CustomEvent = dom.window.CustomEvent;
for (const key of ['navigator', 'HTMLElement', 'HTMLDivElement', 'Element', 'Node', 'localStorage']) {
  if (!(key in globalThis)) {
    try { globalThis[key] = dom.window[key]; } catch { /* read-only in this Node */ }
  }
}

const warnings = [];
const realWarn = console.warn;
console.warn = (...args) => { warnings.push(args.map((a) => (a instanceof Error ? a.message : typeof a === 'string' ? a : '')).join(' ').trim()); };
console.log = () => {}; // the adapters log every measurement they build; stdout is our JSON
console.info = () => {};

const dcmjs = (await import('dcmjs')).default;
const csCore = await import('@cornerstonejs/core');
const csTools = await import('@cornerstonejs/tools');
const adapters = await import('@cornerstonejs/adapters');
const glMatrix = await import('gl-matrix');
const csMetadata = await import('@cornerstonejs/metadata');

// The UMD bundles of @ohif/* require() their dependencies; hand them the modules loaded above (so
// no Node version needs require() of ES modules) and stubs for the React-only OHIF packages.
const i18n = { t: (key) => key, language: 'en' };
const provided = {
  dcmjs,
  '@cornerstonejs/core': csCore,
  '@cornerstonejs/tools': csTools,
  '@cornerstonejs/adapters': adapters,
  '@cornerstonejs/metadata': csMetadata,
  'gl-matrix': glMatrix,
  '@ohif/i18n': { default: i18n, ...i18n, __esModule: true },
  '@ohif/ui-next': {},
  '@ohif/core/src/contextProviders/SystemProvider': { useSystem: () => ({}) },
  '@ohif/extension-cornerstone': {
    // The source the cornerstone extension registers its annotation mappings under.
    Enums: { CORNERSTONE_3D_TOOLS_SOURCE_NAME: 'Cornerstone3DTools', CORNERSTONE_3D_TOOLS_SOURCE_VERSION: '0.1' },
  },
};
const originalLoad = Module._load;
Module._load = function load(request, parent, isMain) {
  if (Object.hasOwn(provided, request)) return provided[request];
  return originalLoad.call(this, request, parent, isMain);
};
const require = createRequire(import.meta.url);
const ohif = require('@ohif/core');
provided['@ohif/core'] = ohif;
const extension = require('@ohif/extension-cornerstone-dicom-sr');
const srModule = extension.default;

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
const { DicomMetadataStore } = ohif;
const MetadataProvider = ohif.classes.MetadataProvider;
csCore.metaData.addProvider(MetadataProvider.get.bind(MetadataProvider), 9999);

/**
 * One instance as OHIF gets it: DICOM JSON (PS3.18 F.2, what a DICOMweb server such as Orthanc
 * answers to a metadata request; a .json file) naturalized by dcmjs as OHIF's DICOMweb data source
 * does, or a Part 10 file read as OHIF's local-file data source reads it.
 */
function readInstance(path) {
  if (path.endsWith('.json')) {
    const instance = DicomMetaDictionary.naturalizeDataset(JSON.parse(readFileSync(path, 'utf8')));
    delete instance.PixelData;
    return instance;
  }
  const buffer = readFileSync(path);
  const arrayBuffer = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const message = DicomMessage.readFile(arrayBuffer);
  const instance = DicomMetaDictionary.naturalizeDataset(message.dict);
  instance._meta = DicomMetaDictionary.namifyDataset(message.meta);
  delete instance.PixelData;
  return instance;
}

const args = process.argv.slice(2);
const split = args.indexOf('--');
const srPaths = split < 0 ? args : args.slice(0, split);
const imagePaths = split < 0 ? [] : args.slice(split + 1);

// Images: one display set per series, one image id per frame (OHIF's wadouri-style ids).
const imageIdsBySeries = new Map();
const imageDisplaySets = [];
const images = imagePaths.map(readInstance);
for (const image of images) {
  const frames = Number(image.NumberOfFrames || 1);
  const ids = imageIdsBySeries.get(image.SeriesInstanceUID) || [];
  for (let frame = 1; frame <= frames; frame++) {
    const imageId = `dicomfile:${image.SOPInstanceUID}${frames > 1 ? `?frame=${frame}` : ''}`;
    MetadataProvider.addImageIdToUIDs(imageId, {
      StudyInstanceUID: image.StudyInstanceUID,
      SeriesInstanceUID: image.SeriesInstanceUID,
      SOPInstanceUID: image.SOPInstanceUID,
      frameNumber: frames > 1 ? frame : undefined,
    });
    ids.push(imageId);
  }
  imageIdsBySeries.set(image.SeriesInstanceUID, ids);
  image.imageId = ids[0];
}
for (const [seriesUid, ids] of imageIdsBySeries) {
  const first = images.find((i) => i.SeriesInstanceUID === seriesUid);
  // addInstances files every instance it is given under the series of the first one.
  DicomMetadataStore.addInstances(images.filter((i) => i.SeriesInstanceUID === seriesUid), true);
  imageDisplaySets.push({
    displaySetInstanceUID: `images-${seriesUid}`,
    StudyInstanceUID: first.StudyInstanceUID,
    SeriesInstanceUID: seriesUid,
    SeriesNumber: first.SeriesNumber,
    Modality: first.Modality,
    FrameOfReferenceUID: first.FrameOfReferenceUID,
    instances: images.filter((i) => i.SeriesInstanceUID === seriesUid),
    imageIds: ids,
    isDerivedDisplaySet: false,
  });
}

// Annotation types the cornerstone extension maps into OHIF measurements.
const MAPPED_TYPES = ['Length', 'Bidirectional', 'EllipticalROI', 'CircleROI', 'ArrowAnnotate', 'Angle', 'CobbAngle',
  'RectangleROI', 'PlanarFreehandROI', 'SplineROI', 'LivewireContour', 'Probe', 'UltrasoundDirectional'];
const rawMeasurements = [];
const srDisplaySets = [];
const displaySetService = {
  EVENTS: { DISPLAY_SETS_ADDED: 'added', DISPLAY_SETS_REMOVED: 'removed' },
  activeDisplaySets: imageDisplaySets,
  subscribe: () => ({ unsubscribe() {} }),
  getDisplaySetByUID: (uid) => [...imageDisplaySets, ...srDisplaySets].find((d) => d.displaySetInstanceUID === uid),
  getDisplaySetsBy: (filter) => imageDisplaySets.filter(filter),
};
const source = { name: 'Cornerstone3DTools', version: '0.1' };
const measurementService = {
  getSourceMappings: () => MAPPED_TYPES.map((annotationType) => ({ annotationType, toMeasurementSchema: () => ({}) })),
  getSource: () => source,
  addRawMeasurement: (src, annotationType, data) => {
    rawMeasurements.push({ annotationType, annotation: data.annotation });
    return `measurement-${rawMeasurements.length}`;
  },
};
const dataSource = {
  getImageIdsForDisplaySet: (displaySet) => displaySet.imageIds || [],
  retrieve: { bulkDataURI: async () => { throw new Error('our SRs carry no bulk data'); } },
};
const servicesManager = {
  services: {
    displaySetService,
    measurementService,
    // OHIF's default customizations: no coding values of its own, nothing else set.
    customizationService: { getCustomization: (name) => (name === 'codingValues' ? {} : undefined) },
  },
};
const extensionManager = {
  getDataSources: () => [dataSource],
  getActiveDataSource: () => [dataSource],
};
const commandsManager = { runCommand: () => undefined };

const handlers = srModule.getSopClassHandlerModule({ servicesManager, extensionManager });

function codeMeaning(item) {
  const code = Array.isArray(item) ? item[0] : item;
  return code ? code.CodeMeaning : undefined;
}

const results = [];
for (const path of srPaths) {
  const sr = readInstance(path);
  const warningsBefore = warnings.length;
  DicomMetadataStore.addInstances([sr], true);
  const handler = handlers.find((h) => h.sopClassUids.includes(sr.SOPClassUID));
  const result = { path, sopInstanceUID: sr.SOPInstanceUID, specificCharacterSet: sr.SpecificCharacterSet };
  result.title = codeMeaning(sr.ConceptNameCodeSequence);
  if (!handler) {
    result.error = `no OHIF SOP Class Handler for ${sr.SOPClassUID}`;
    results.push(result);
    continue;
  }
  const [displaySet] = handler.getDisplaySetsFromSeries([sr]);
  srDisplaySets.push(displaySet);
  await displaySet.load();
  result.handler = handler.name;
  result.isImagingMeasurementReport = displaySet.isImagingMeasurementReport;
  result.isRehydratable = displaySet.isRehydratable;
  result.referencedImages = displaySet.referencedImages;
  result.displayed = displaySet.measurements.map((m) => ({
    trackingUniqueIdentifier: m.TrackingUniqueIdentifier,
    trackingIdentifier: m.TrackingIdentifier,
    loaded: m.loaded,
    sopInstanceUID: m.ReferencedSOPInstanceUID || null,
    frameNumber: m.frameNumber || null,
    imageId: m.imageId || null,
    graphicType: m.graphicType,
    // The DICOMSRDisplay tool's text box: "<label>: <value>" for the first five labels.
    labels: m.labels,
  }));
  const before = rawMeasurements.length;
  try {
    // What OHIF's hydrateStructuredReport command runs when the user accepts "track".
    extension.hydrateStructuredReport({ servicesManager, extensionManager, commandsManager }, displaySet.displaySetInstanceUID);
  } catch (error) {
    result.hydrationError = error.message;
  }
  result.hydrated = rawMeasurements.slice(before).map(({ annotationType, annotation }) => ({
    annotationType,
    referencedImageId: annotation.metadata.referencedImageId || null,
    sopInstanceUID: annotation.metadata.referencedImageId
      ? MetadataProvider.getUIDsFromImageID(annotation.metadata.referencedImageId).SOPInstanceUID : null,
    frameNumber: annotation.data.frameNumber || null,
    label: annotation.data.label ?? null,
    finding: annotation.data.finding ? annotation.data.finding.text : null,
    findingSites: (annotation.data.findingSites || []).map((site) => site.text),
    points: annotation.data.handles.points,
  }));
  result.warnings = warnings.slice(warningsBefore);
  results.push(result);
}
console.warn = realWarn;
process.stdout.write(JSON.stringify({ results }, null, 1));
