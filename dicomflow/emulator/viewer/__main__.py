from dicomflow.emulator.viewer.gateway import main

main()
