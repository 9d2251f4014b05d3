/** The SDK's version. Part of the cross-tab lock and channel names, so tabs running different
 * SDK builds never relay to each other in a format the other does not understand. Kept in step
 * with package.json by a unit test. */
export const SDK_VERSION = '0.1.0';
